"""Evaluations and assurance artefacts built from Charter outputs."""
