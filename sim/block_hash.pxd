# C types for sim/block_hash.py when Cython compiles it (setup_native.py): an "augmenting" .pxd,
# so block_hash.py stays plain Python.  The tuple-hash arithmetic runs on 64-bit unsigned C
# integers, where wrapping is the `& _M64` the Python source spells out.
cimport cython
from libc.stdint cimport int64_t, uint64_t

cdef uint64_t _M64, _TWO63, _XX1, _XX2, _XX5, _LEN_SALT, _MINUS_ONE_HASH
cdef int64_t _P61

@cython.locals(r=int64_t)
cdef inline int64_t _mod_p61(int64_t u) noexcept
@cython.locals(u=int64_t, r=int64_t, m=int64_t)
cdef inline uint64_t _int_lane(int64_t v) noexcept
cdef inline uint64_t _mix(uint64_t acc, uint64_t lane) noexcept
cdef inline uint64_t _close(uint64_t acc, uint64_t n) noexcept
@cython.locals(d=int64_t)
cdef inline int64_t _signed(uint64_t u) noexcept
cdef inline uint64_t _piece_lane(int64_t seg, int64_t start, int64_t end) noexcept
cpdef int64_t _run_block_arith(int64_t parent, int64_t seg, int64_t start, int64_t end)
@cython.locals(acc=uint64_t)
cpdef int64_t _span_arith(int64_t parent, list pieces) except? -1
@cython.locals(acc=uint64_t)
cpdef int64_t _key_arith(int64_t n, int64_t seg, int64_t length, int64_t block_size)
cdef bint FAST
cdef inline int64_t _run_block(int64_t parent, int64_t seg, int64_t start, int64_t end) except? -1

cdef object _ZEROS
cdef list _NO_PIECES
@cython.locals(k=Py_ssize_t)
cdef object _zeros(Py_ssize_t k)

@cython.locals(parent=int64_t, seg_idx=Py_ssize_t, seg_off=int64_t, remaining=Py_ssize_t, seg_id=object,
               seg_len=int64_t, k=int64_t, off=int64_t, need=int64_t, take=int64_t, pieces=list,
               done=Py_ssize_t, i=Py_ssize_t, hv=int64_t[::1], hashes=object, acc=uint64_t, count=uint64_t,
               resume=int64_t, start=int64_t)
cpdef object _extend_chain(object head, tuple segments, Py_ssize_t bs, Py_ssize_t num_blocks,
                           Py_ssize_t base_n=*, int64_t base_total=*)

cdef dict _CHAINS
cdef Py_ssize_t _CHAINS_MAX
@cython.locals(last=tuple)
cdef object _memo_key(tuple segments, Py_ssize_t n, Py_ssize_t block_size)
@cython.locals(items=list)
cdef _trim(dict memo)

@cython.locals(i=Py_ssize_t, a=object, b=object)
cdef bint _same_head(tuple stored, tuple segments, Py_ssize_t n) except -1

@cython.locals(total=int64_t, i=Py_ssize_t, num_blocks=Py_ssize_t)
cdef tuple _resume(object hashes, tuple segments, Py_ssize_t block_size, Py_ssize_t base_n, int64_t base_total)

@cython.locals(n=Py_ssize_t, total=int64_t, hashes=object, hit=object, head=object, key=object,
               head_key=object, drop=Py_ssize_t, base_n=Py_ssize_t)
cpdef object shared_prefix_hashes(tuple segments, Py_ssize_t block_size)

cdef dict _LENT
@cython.locals(segments=tuple, n=Py_ssize_t, total=int64_t, base_n=Py_ssize_t, hashes=object, head=object)
cdef object _turn_chain(object req, Py_ssize_t block_size)

@cython.locals(out=list, segs=tuple, run=tuple, total=int64_t)
cpdef list tokens_covered(list segment_lists)
