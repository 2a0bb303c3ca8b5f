"""L1: the plain callables that Ray wraps (a notebook can call them too): the workspace (`workspace`),
preparing the Original and Retrain models (`prepare`), evaluating a model (`evaluate`), unlearning one
configuration (`unlearn`) and relearning attacks (`relearn`)."""
