"""Model families, one file each, pure nn.Modules (no files, CLIs or datasets here)."""
