"""HTTP layer and the request options shared with the library API."""
