"""``import costwatch.autoinstrument``: instrument this process with settings from the environment."""

from costwatch.instrument import instrument

instrument()
