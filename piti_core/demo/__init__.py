"""`piti demo`: a local web page to draw or upload a condition and sample a run (stdlib HTTP server)."""
