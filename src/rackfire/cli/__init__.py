"""The CLI: a thin client of the REST API. Every read command has --json."""
