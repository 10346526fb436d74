"""The `svdlora` command line: option parsing and rendering over the core library."""
