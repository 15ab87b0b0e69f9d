"""The web layer: the app factory, the webhook intake, the API and the pages."""
