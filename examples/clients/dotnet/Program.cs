// Calls a running `tunesmith serve` from .NET: the /generate endpoint, then a chat completion.
//
//   dotnet run -- http://127.0.0.1:8000 [MODEL]          (with the .NET SDK)
//   mcs -out:client.exe -r:System.Net.Http.dll -r:System.Runtime.Serialization.dll \
//       Program.cs TunesmithClient.cs && mono client.exe http://127.0.0.1:8000 [MODEL]
//
// MODEL is the base model's name or an adapter's; TUNESMITH_API_KEY holds the key, if any.

using System;
using System.Text;
using System.Threading.Tasks;

namespace Tunesmith.Client
{
    static class Program
    {
        static int Main(string[] args)
        {
            Console.OutputEncoding = new UTF8Encoding(false);
            try
            {
                return RunAsync(args).GetAwaiter().GetResult();
            }
            catch (TunesmithException e)
            {
                Console.Error.WriteLine(e.Message);
                return 1;
            }
        }

        static async Task<int> RunAsync(string[] args)
        {
            string baseUrl = args.Length > 0 ? args[0] : "http://127.0.0.1:8000";
            string model = args.Length > 1 ? args[1] : null;
            string apiKey = Environment.GetEnvironmentVariable("TUNESMITH_API_KEY");
            using (var client = new TunesmithClient(baseUrl, apiKey))
            {
                string answer = await client.GetCompletionAsync("What does json.dumps do?", model, 16);
                Console.WriteLine("generate: " + answer);
                string reply = await client.ChatAsync(model ?? "tunesmith-demo-4m", new[]
                {
                    new ChatMessage("system", "You answer questions about Python."),
                    new ChatMessage("user", "How do I sort a list?"),
                }, 16);
                Console.WriteLine("chat: " + reply);
            }
            return 0;
        }
    }
}
