"""The settings kvproxy runs with, resolved once by the CLI."""
