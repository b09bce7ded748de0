"""What judges: the diagnosis of one agent (named findings) and the differences between two."""
