"""Datasets: the GUE registry and loader, and synthetic GUE-shaped data."""
