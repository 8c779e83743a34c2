"""Several problems at once: all of them are reported together."""

external_ssd = "/dev/../sda"
