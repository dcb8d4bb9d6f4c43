"""The DVC stage entry points (see dvc.yaml): each a thin ``main()`` over ``lossbench``."""
