"""`tunesmith ui`: the local web UI (runs and reports, a side-by-side playground, blind A/B review).

workspace (stage directories and their reports, confined to a root), reviews (SQLite votes, win
rates, preference export), upstream (the model server), routes (/ui/api), app (the standalone app
and the /ui mount on `tunesmith serve`), static/ (the page: plain HTML, CSS and JS modules).
"""
