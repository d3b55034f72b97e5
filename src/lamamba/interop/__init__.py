"""Bridges to the tools researchers already use: diffusers pipelines (``diffusers_model``, ``export_diffusers``,
``import_diffusers``) and checkpoints of the authors' released code (``official``).

Nothing is imported here: each module pulls in its optional dependency only when it is used.
"""
