"""A domain with an empty label and upper-case letters."""

domain = "Example..org"
apps = []
