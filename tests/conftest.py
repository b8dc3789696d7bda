pytest_plugins = ["natsagents.testing.plugin"]
