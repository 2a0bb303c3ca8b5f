"""Generated datasets with the schema of the real ones (TOFU, MUSE, WMDP), written from a seed."""
