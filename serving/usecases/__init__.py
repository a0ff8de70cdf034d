"""The application layer: every use case once, called by the HTTP routes, the CLI and index jobs alike."""
