"""Pruning methods as registry plug-ins (one module each; registered in :mod:`crop.pruning.registry`)."""
