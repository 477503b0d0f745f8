"""Developer tools that are not part of the installed server (training the demo model)."""
