"""`feedrank ...` commands, one module per command group; thin wrappers over the library."""
