"""Offline distillation of reasoning teachers: generate -> clean -> train, meeting only through files."""
