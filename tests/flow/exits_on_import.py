"""A module that ends the interpreter when imported: a flow naming it is bad input."""

import sys

sys.exit("this module refuses to be imported")
