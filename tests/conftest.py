pytest_plugins = ["support.s3server", "support.openai_server"]
