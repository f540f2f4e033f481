# Let gevent serve many connections from one process: these two lines
# must run before anything else is imported.
from gevent import monkey
monkey.patch_all()
