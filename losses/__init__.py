"""Your losses: put a module here and name it in params.yaml as ``losses.<module>:<attr>``.

``examples.py`` holds worked examples (NumPy twins of torch's L1, Huber and BCE).
"""
