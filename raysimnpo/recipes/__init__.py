"""L1: the plain callables that Ray wraps (a notebook can call them too): the workspace, preparing the
Original and Retrain models, unlearning one configuration (`unlearn`) and relearning attacks (`relearn`)."""
