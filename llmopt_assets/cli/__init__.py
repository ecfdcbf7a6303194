"""Entry points: the `llmopt` command and its subcommands (each a module with main(argv) -> int)."""
