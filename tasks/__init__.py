"""SeqIO task registrations: importing this package registers them.

`tasks.fortunes` registers the embedded FreeBSD-fortunes corpus once it has been scored
(`toxjax score`); register your own corpus with `toxjax.registry.register_corpus`.
"""

from tasks import fortunes  # noqa: F401
