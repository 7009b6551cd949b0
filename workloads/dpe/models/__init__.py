"""Vision-language models: building tiny ones, loading any, answering with them."""
