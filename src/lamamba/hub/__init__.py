"""The Hugging Face Hub: load weights by repository id (``download``) and publish a run (``push``, ``card``).

``pip install "lamamba[hub]"``. Only ``model.safetensors`` and ``config.json`` are ever downloaded for a model:
nothing is unpickled. Nothing is imported here.
"""
