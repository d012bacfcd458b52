"""The functional core: pure rules with no I/O (acceptance, selection, lineage, the decision)."""
