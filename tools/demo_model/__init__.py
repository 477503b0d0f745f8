"""The demo model ``demo-shapes``: a tiny world of coloured shapes, and the code that trains
an SD-shaped latent diffusion pipeline to draw it.

``world`` renders scenes and judges generated images (no torch); ``build`` makes the
pipeline's components; ``train`` trains them (``python -m tools.demo_model --help``).
"""
