"""Corrections: plain nn.Modules that know nothing about physics."""
