"""Compute kernels. Imports with torch alone."""
