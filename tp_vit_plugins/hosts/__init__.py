"""Host adapters: the only code that reads a host library's internals (one package per host)."""
