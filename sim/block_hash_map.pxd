# C types for sim/block_hash_map.py when Cython compiles it (setup_native.py): an "augmenting"
# .pxd, so the source stays plain Python.  sim/block_pool.pxd cimports the class and calls its
# methods as C functions.
cimport cython
from libc.stdint cimport int64_t, uint64_t

cdef uint64_t _M64, _FIB
cdef bint COMPILED

cdef extern from *:
    void _prefetch "__builtin_prefetch" (const void *p) noexcept nogil

cdef inline Py_ssize_t _home(int64_t h, int shift) noexcept


@cython.final                # no subclasses: its cpdef methods are called directly, not looked up
cdef class BlockHashMap:
    cdef public int shift
    cdef public Py_ssize_t mask, num_hashes
    cdef public object slots
    cdef public dict multi
    cdef int64_t[::1] _slots

    cpdef Py_ssize_t get(self, int64_t h) noexcept

    cdef inline void prefetch(self, int64_t h) noexcept

    @cython.locals(s=Py_ssize_t, first=int64_t)
    cpdef add(self, int64_t h, Py_ssize_t block)

    @cython.locals(s=Py_ssize_t, blocks=dict)
    cpdef remove(self, int64_t h, Py_ssize_t block)

    @cython.locals(s=Py_ssize_t)
    cdef Py_ssize_t _find(self, int64_t h) noexcept

    @cython.locals(mask=Py_ssize_t, i=Py_ssize_t, j=Py_ssize_t, k=Py_ssize_t)
    cdef void _delete_slot(self, Py_ssize_t s) noexcept
