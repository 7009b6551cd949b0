pytest_plugins = [
    "support.s3server",
    "support.openai_server",
    "support.search_server",
    "support.images_server",
    "support.kube_emulator",
]
