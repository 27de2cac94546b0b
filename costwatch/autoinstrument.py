"""``import costwatch.autoinstrument``: instrument this process with settings from the environment."""

from costwatch.instrumentation import instrument

instrument()
