pytest_plugins = ["mosaic.testing.plugin"]
