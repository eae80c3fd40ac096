"""Click commands of the ``npga`` tool (imported as ``npga_taichi.cli``), one module per command."""
