# C types for sim/block_pool.py when Cython compiles it (setup_native.py): an "augmenting" .pxd,
# so block_pool.py stays plain Python.  Only the hot loops are typed; the numpy arrays stay
# public attributes (the KV-cache manager and tests read them), the memoryviews are private
# aliases of the same buffers.
cimport cython
from libc.stdint cimport int32_t, int64_t

from sim.block_hash_map cimport BlockHashMap, _prefetch

cdef bint COMPILED

cdef int64_t NO_HASH     # a C constant in the loops (0)


cdef class BlockPool:
    cdef public Py_ssize_t num_blocks
    cdef public bint enable_caching
    cdef public object ref, hash_of, public, stack, fifo, where
    cdef public BlockHashMap map
    cdef public Py_ssize_t top, head, tail, num_stale, nfree, num_cached_free, num_evictions
    cdef int32_t[:] _ref                # _ref, _hash, _where: fields of one record per block (STATE)
    cdef int64_t[:] _hash
    cdef unsigned char[::1] _public
    cdef Py_ssize_t[::1] _stack
    cdef Py_ssize_t[::1] _fifo
    cdef int32_t[:] _where

    cdef _views(self)

    @cython.locals(tv=Py_ssize_t[:], n=Py_ssize_t, m=Py_ssize_t, b=int64_t, hv=int64_t[::1], i=Py_ssize_t)
    cpdef Py_ssize_t hit_into(self, table, hashes, Py_ssize_t limit=*) except -1

    cpdef get_new_blocks(self, Py_ssize_t n)

    @cython.locals(tv=Py_ssize_t[:], i=Py_ssize_t)
    cpdef get_new_blocks_into(self, table, Py_ssize_t start, Py_ssize_t n)

    @cython.locals(out=list)
    cpdef list pop_few(self, Py_ssize_t n)

    @cython.locals(b=Py_ssize_t, pos=Py_ssize_t)
    cdef Py_ssize_t _pop(self) except -1

    @cython.locals(far=Py_ssize_t, near=Py_ssize_t, b=Py_ssize_t)
    cdef inline void _prefetch_next(self, Py_ssize_t pos) noexcept

    @cython.locals(bl=Py_ssize_t[:], ref=int32_t[:], i=Py_ssize_t, end=Py_ssize_t, k=Py_ssize_t)
    cpdef Py_ssize_t count_free(self, blocks, Py_ssize_t start=*, Py_ssize_t n=*) except -1

    @cython.locals(bl=Py_ssize_t[:], i=Py_ssize_t)
    cpdef touch(self, blocks)

    cdef inline void _take(self, Py_ssize_t b) noexcept

    @cython.locals(tv=Py_ssize_t[:], i=Py_ssize_t)
    cpdef adopt(self, table, Py_ssize_t start, Py_ssize_t n)

    cdef inline void _to_front(self, Py_ssize_t b) noexcept
    cdef _room(self, Py_ssize_t m)
    @cython.locals(t=Py_ssize_t)
    cdef inline void _to_back(self, Py_ssize_t b) noexcept

    @cython.locals(bl=Py_ssize_t[:], n=Py_ssize_t, ref=int32_t[:], i=Py_ssize_t, b=Py_ssize_t,
                   m=Py_ssize_t, z=Py_ssize_t)
    cpdef free_blocks(self, ordered)

    @cython.locals(h=int64_t[:], base=int64_t, k=Py_ssize_t, b=Py_ssize_t)
    cpdef set_private_hashes(self, const Py_ssize_t[:] blocks, Py_ssize_t start, int64_t key, bint fresh)

    cpdef cache_public(self, Py_ssize_t block, int64_t block_hash)

    @cython.locals(bv=Py_ssize_t[:], i=Py_ssize_t, hv=int64_t[::1])
    cpdef cache_public_run(self, table, hashes, Py_ssize_t start, Py_ssize_t end)
