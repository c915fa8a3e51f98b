"""thinserve: thin-client terminal server."""
