"""What a method's author needs to hold a method to the contract every registered method keeps (as Captum ships
``captum.testing``): the conformance suite (``conformance.ConformanceSuite``, a pytest class), the classifiers its
specimens explain (``specimens``) and hand-built models whose answers are known (``toy_models``).

This package needs pytest (the ``dev`` extra); nothing else in ``interp_ray`` imports it, and importing it imports
nothing (each module is imported where used).
"""
