// A small client for `tunesmith serve` built on HttpClient, for .NET applications.
//
// It talks to two endpoints: POST /generate ({"prompt"} -> {"response"}), the minimal endpoint the
// fine-tuning guides describe, and POST /v1/chat/completions, the OpenAI API (any OpenAI SDK for .NET
// works as well; this file shows what goes over the wire). JSON is handled with
// DataContractJsonSerializer so the same file compiles with the .NET SDK and with Mono's mcs.

using System;
using System.Collections.Generic;
using System.IO;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Runtime.Serialization;
using System.Runtime.Serialization.Json;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Tunesmith.Client
{
    [DataContract]
    public class ChatMessage
    {
        public ChatMessage(string role, string content) { Role = role; Content = content; }

        [DataMember(Name = "role")] public string Role { get; set; }
        [DataMember(Name = "content")] public string Content { get; set; }
    }

    [DataContract]
    class GenerateRequest
    {
        [DataMember(Name = "prompt")] public string Prompt { get; set; }
        [DataMember(Name = "model", EmitDefaultValue = false)] public string Model { get; set; }
        [DataMember(Name = "max_tokens", EmitDefaultValue = false)] public int? MaxTokens { get; set; }
    }

    [DataContract]
    class GenerateResponse
    {
        [DataMember(Name = "response")] public string Response { get; set; }
    }

    [DataContract]
    class ChatRequest
    {
        [DataMember(Name = "model")] public string Model { get; set; }
        [DataMember(Name = "messages")] public List<ChatMessage> Messages { get; set; }
        [DataMember(Name = "max_tokens", EmitDefaultValue = false)] public int? MaxTokens { get; set; }
        [DataMember(Name = "temperature")] public double Temperature { get; set; }
    }

    [DataContract]
    class ChatChoice
    {
        [DataMember(Name = "message")] public ChatMessage Message { get; set; }
        [DataMember(Name = "finish_reason")] public string FinishReason { get; set; }
    }

    [DataContract]
    class ChatResponse
    {
        [DataMember(Name = "choices")] public List<ChatChoice> Choices { get; set; }
    }

    [DataContract]
    class ErrorBody
    {
        [DataMember(Name = "message")] public string Message { get; set; }
        [DataMember(Name = "type")] public string Type { get; set; }
        [DataMember(Name = "code")] public string Code { get; set; }
    }

    [DataContract]
    class ErrorEnvelope
    {
        [DataMember(Name = "error")] public ErrorBody Error { get; set; }
    }

    /// <summary>An error response from the server, in OpenAI's error envelope.</summary>
    public class TunesmithException : Exception
    {
        public TunesmithException(int status, string code, string message)
            : base("HTTP " + status + " (" + (code ?? "error") + "): " + message)
        {
            Status = status;
            Code = code;
        }

        public int Status { get; private set; }
        public string Code { get; private set; }
    }

    public class TunesmithClient : IDisposable
    {
        readonly HttpClient http;

        /// <param name="baseUrl">The server, e.g. http://127.0.0.1:8000 (without /v1).</param>
        /// <param name="apiKey">The server's API key, or null when it runs without one.</param>
        public TunesmithClient(string baseUrl, string apiKey = null, TimeSpan? timeout = null)
        {
            http = new HttpClient { BaseAddress = new Uri(baseUrl.TrimEnd('/') + "/") };
            http.Timeout = timeout ?? TimeSpan.FromSeconds(120);
            if (!string.IsNullOrEmpty(apiKey))
                http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        }

        /// <summary>POST /generate: the prompt becomes one user turn; returns the model's answer.</summary>
        public async Task<string> GetCompletionAsync(string prompt, string model = null, int? maxTokens = null,
                                                     CancellationToken cancel = default(CancellationToken))
        {
            var request = new GenerateRequest { Prompt = prompt, Model = model, MaxTokens = maxTokens };
            var response = await PostAsync<GenerateRequest, GenerateResponse>("generate", request, cancel);
            return response.Response;
        }

        /// <summary>POST /v1/chat/completions with greedy decoding; `model` picks the base or an adapter.</summary>
        public async Task<string> ChatAsync(string model, IEnumerable<ChatMessage> messages, int? maxTokens = null,
                                            CancellationToken cancel = default(CancellationToken))
        {
            var request = new ChatRequest
            {
                Model = model, Messages = new List<ChatMessage>(messages), MaxTokens = maxTokens, Temperature = 0
            };
            var response = await PostAsync<ChatRequest, ChatResponse>("v1/chat/completions", request, cancel);
            return response.Choices[0].Message.Content;
        }

        async Task<TResponse> PostAsync<TRequest, TResponse>(string path, TRequest body, CancellationToken cancel)
        {
            var content = new StringContent(ToJson(body), Encoding.UTF8, "application/json");
            using (var response = await http.PostAsync(path, content, cancel))
            {
                var text = await response.Content.ReadAsStringAsync();
                if (!response.IsSuccessStatusCode)
                {
                    ErrorBody error = null;
                    try { error = FromJson<ErrorEnvelope>(text).Error; }
                    catch (SerializationException) { }
                    throw new TunesmithException((int)response.StatusCode, error != null ? error.Code : null,
                                                 error != null ? error.Message : text);
                }
                return FromJson<TResponse>(text);
            }
        }

        static string ToJson<T>(T value)
        {
            using (var stream = new MemoryStream())
            {
                new DataContractJsonSerializer(typeof(T)).WriteObject(stream, value);
                return Encoding.UTF8.GetString(stream.ToArray());
            }
        }

        static T FromJson<T>(string json)
        {
            using (var stream = new MemoryStream(Encoding.UTF8.GetBytes(json)))
                return (T)new DataContractJsonSerializer(typeof(T)).ReadObject(stream);
        }

        public void Dispose() { http.Dispose(); }
    }
}
