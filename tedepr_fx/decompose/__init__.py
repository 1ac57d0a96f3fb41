"""Initialising factors: from scratch (variance-preserving) or by decomposing a dense weight.

``tt`` holds the tensor-train side (TT-SVD, scratch init), ``tucker`` the Tucker side
(HOSVD / partial Tucker, scratch init). Import from the submodules.
"""
