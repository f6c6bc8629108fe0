"""Trainers: one recipe module per CLI command (``plc``, ``localizer``) plus shared ``common`` helpers."""
