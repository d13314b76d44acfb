"""Automated red teaming: attack a guard or an OpenAI-compatible endpoint, grade, report, patch.

Behaviours come from the constitution's restricted seed requests (shape-only); attacks wrap
them with Charter's transform library and generic jailbreak templates that have a
``{payload}`` slot. Nothing here carries operational harmful content.
"""
