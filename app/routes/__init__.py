"""HTTP and WebSocket routes, grouped by concern; they parse requests and format responses, nothing more."""
