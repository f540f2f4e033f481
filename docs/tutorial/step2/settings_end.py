INSTALLED_APPS += ["chat"]
