"""Thin command-line front ends: parse, configure logging, run."""
